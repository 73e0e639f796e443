"""MPII Human Pose: release parser, person splits and the ``mpii_human_pose`` tfds builder.

Importing ``data.mpii.builder`` registers the builder with tfds; ``data.mpii`` itself stays light (no tfds import)
so that the parser can be used on its own.
"""
