"""Masked generator adapters behind one protocol (see ``maskfocus.models.base``)."""
