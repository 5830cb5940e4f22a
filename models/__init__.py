"""Model loading and inference: the only package that imports torch and transformers.

Import ``models.runner`` explicitly where a model is needed; this package's ``__init__`` stays
light so that ``models.labels`` can be used without loading torch.
"""
