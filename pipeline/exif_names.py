"""Canonical tag names: one naming for EXIF read from image bytes and from YFCC's side file.

metadata-extractor (and so YFCC100M's ``yfcc100m_exif``) names a tag ``Directory.Tag Name``.
exiflang keys tags by the bare human-readable name for the standard EXIF directories, where
names do not collide, and keeps the directory only where it must:

- ``Exif IFD0``, ``Exif SubIFD``, ``Interoperability``, ``GPS`` -> ``Tag Name``
  (IFD0 wins over SubIFD if both hold a name);
- ``Exif Thumbnail`` (IFD1) -> ``Thumbnail Tag Name`` ("Thumbnail Compression", as in the paper);
- anything else (maker notes, XMP, IPTC, JFIF, ...) -> ``Directory.Tag Name``, so it is kept
  but never collides with a standard tag.
"""
from __future__ import annotations

# Lower number = higher precedence when two directories give the same bare name.
STANDARD_DIRECTORIES: dict[str, int] = {
    "Exif IFD0": 0,
    "Exif SubIFD": 1,
    "GPS": 2,
    "Interoperability": 3,
}
THUMBNAIL_DIRECTORY = "Exif Thumbnail"
THUMBNAIL_PREFIX = "Thumbnail "


def canonical_tag_name(directory: str, tag: str) -> str:
    """Map a metadata-extractor ``(directory, tag name)`` pair to exiflang's tag key."""
    directory = directory.strip()
    tag = tag.strip()
    if directory in STANDARD_DIRECTORIES:
        return tag
    if directory == THUMBNAIL_DIRECTORY:
        return tag if tag.startswith(THUMBNAIL_PREFIX) else THUMBNAIL_PREFIX + tag
    return f"{directory}.{tag}"


def directory_precedence(directory: str) -> int:
    """Precedence of a directory when two give the same canonical name (lower wins)."""
    return STANDARD_DIRECTORIES.get(directory.strip(), 10)
