"""lwise: model-guided stimuli for human visual learning, and model-human alignment measures."""

__version__ = "0.1.0"
