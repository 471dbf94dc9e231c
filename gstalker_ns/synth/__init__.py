"""gstalker-synth: the project's procedural talking subject (ray-cast head, speech, ground truth).

Entry points: `gstalker_ns.synth.subject.generate_subject` and the `gstalker-synth` CLI
(`gstalker_ns.synth.cli:main`).
"""
