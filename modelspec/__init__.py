"""Shared model metadata, preprocessing spec and decode policy (export writes it, the handler
reads it); the served image pipeline is modelspec.imaging, its reference modelspec.reference,
the architectures modelspec.architectures. Import from the modules themselves."""
