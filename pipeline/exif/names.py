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


# metadata-extractor's names for tag numbers, so EXIF read from image bytes with pyexiv2 (which
# keys tags by number and exiv2's own names) is keyed like the YFCC side file.  One table serves
# IFD0, SubIFD, IFD1 and Interoperability: metadata-extractor shares it across those directories.
EXIF_TAG_NAMES: dict[int, str] = {
    0x0001: "Interoperability Index",
    0x0002: "Interoperability Version",
    0x00FE: "New Subfile Type",
    0x00FF: "Subfile Type",
    0x0100: "Image Width",
    0x0101: "Image Height",
    0x0102: "Bits Per Sample",
    0x0103: "Compression",
    0x0106: "Photometric Interpretation",
    0x0107: "Thresholding",
    0x010A: "Fill Order",
    0x010D: "Document Name",
    0x010E: "Image Description",
    0x010F: "Make",
    0x0110: "Model",
    0x0111: "Strip Offsets",
    0x0112: "Orientation",
    0x0115: "Samples Per Pixel",
    0x0116: "Rows Per Strip",
    0x0117: "Strip Byte Counts",
    0x0118: "Minimum Sample Value",
    0x0119: "Maximum Sample Value",
    0x011A: "X Resolution",
    0x011B: "Y Resolution",
    0x011C: "Planar Configuration",
    0x011D: "Page Name",
    0x0128: "Resolution Unit",
    0x0129: "Page Number",
    0x012D: "Transfer Function",
    0x0131: "Software",
    0x0132: "Date/Time",
    0x013B: "Artist",
    0x013C: "Host Computer",
    0x013D: "Predictor",
    0x013E: "White Point",
    0x013F: "Primary Chromaticities",
    0x0142: "Tile Width",
    0x0143: "Tile Length",
    0x0144: "Tile Offsets",
    0x0145: "Tile Byte Counts",
    0x0152: "Extra Samples",
    0x0153: "Sample Format",
    0x0156: "Transfer Range",
    0x015B: "JPEG Tables",
    0x0200: "JPEG Proc",
    0x0203: "JPEG Restart Interval",
    0x0205: "JPEG Lossless Predictors",
    0x0206: "JPEG Point Transforms",
    0x0207: "JPEGQ Tables",
    0x0208: "JPEGDC Tables",
    0x0209: "JPEGAC Tables",
    0x0211: "YCbCr Coefficients",
    0x0212: "YCbCr Sub-Sampling",
    0x0213: "YCbCr Positioning",
    0x0214: "Reference Black/White",
    0x022F: "Strip Row Counts",
    0x02BC: "Application Notes",
    0x1000: "Related Image File Format",
    0x1001: "Related Image Width",
    0x1002: "Related Image Height",
    0x4746: "Rating",
    0x4749: "Rating Percent",
    0x828D: "CFA Repeat Pattern Dim",
    0x828E: "CFA Pattern",
    0x828F: "Battery Level",
    0x8298: "Copyright",
    0x829A: "Exposure Time",
    0x829D: "F-Number",
    0x83BB: "IPTC/NAA",
    0x8773: "Inter Color Profile",
    0x8822: "Exposure Program",
    0x8824: "Spectral Sensitivity",
    0x8827: "ISO Speed Ratings",
    0x8828: "Opto-electric Conversion Function (OECF)",
    0x8829: "Interlace",
    0x882A: "Time Zone Offset",
    0x882B: "Self Timer Mode",
    0x8830: "Sensitivity Type",
    0x8831: "Standard Output Sensitivity",
    0x8832: "Recommended Exposure Index",
    0x8833: "ISO Speed",
    0x8834: "ISO Speed Latitude yyy",
    0x8835: "ISO Speed Latitude zzz",
    0x9000: "Exif Version",
    0x9003: "Date/Time Original",
    0x9004: "Date/Time Digitized",
    0x9010: "Time Zone",
    0x9011: "Time Zone Original",
    0x9012: "Time Zone Digitized",
    0x9101: "Components Configuration",
    0x9102: "Compressed Bits Per Pixel",
    0x9201: "Shutter Speed Value",
    0x9202: "Aperture Value",
    0x9203: "Brightness Value",
    0x9204: "Exposure Bias Value",
    0x9205: "Max Aperture Value",
    0x9206: "Subject Distance",
    0x9207: "Metering Mode",
    0x9208: "White Balance",
    0x9209: "Flash",
    0x920A: "Focal Length",
    0x920B: "Flash Energy",
    0x920C: "Spatial Frequency Response",
    0x920D: "Noise",
    0x920E: "Focal Plane X Resolution",
    0x920F: "Focal Plane Y Resolution",
    0x9211: "Image Number",
    0x9212: "Security Classification",
    0x9213: "Image History",
    0x9214: "Subject Location",
    0x9215: "Exposure Index",
    0x9216: "TIFF/EP Standard ID",
    0x927C: "Makernote",
    0x9286: "User Comment",
    0x9290: "Sub-Sec Time",
    0x9291: "Sub-Sec Time Original",
    0x9292: "Sub-Sec Time Digitized",
    0x9400: "Temperature",
    0x9401: "Humidity",
    0x9402: "Pressure",
    0x9403: "Water Depth",
    0x9404: "Acceleration",
    0x9405: "Camera Elevation Angle",
    0x9C9B: "Windows XP Title",
    0x9C9C: "Windows XP Comment",
    0x9C9D: "Windows XP Author",
    0x9C9E: "Windows XP Keywords",
    0x9C9F: "Windows XP Subject",
    0xA000: "FlashPix Version",
    0xA001: "Color Space",
    0xA002: "Exif Image Width",
    0xA003: "Exif Image Height",
    0xA004: "Related Sound File",
    0xA20B: "Flash Energy",
    0xA20C: "Spatial Frequency Response",
    0xA20E: "Focal Plane X Resolution",
    0xA20F: "Focal Plane Y Resolution",
    0xA210: "Focal Plane Resolution Unit",
    0xA214: "Subject Location",
    0xA215: "Exposure Index",
    0xA217: "Sensing Method",
    0xA300: "File Source",
    0xA301: "Scene Type",
    0xA302: "CFA Pattern",
    0xA401: "Custom Rendered",
    0xA402: "Exposure Mode",
    0xA403: "White Balance Mode",
    0xA404: "Digital Zoom Ratio",
    0xA405: "Focal Length 35",
    0xA406: "Scene Capture Type",
    0xA407: "Gain Control",
    0xA408: "Contrast",
    0xA409: "Saturation",
    0xA40A: "Sharpness",
    0xA40B: "Device Setting Description",
    0xA40C: "Subject Distance Range",
    0xA420: "Unique Image ID",
    0xA430: "Camera Owner Name",
    0xA431: "Body Serial Number",
    0xA432: "Lens Specification",
    0xA433: "Lens Make",
    0xA434: "Lens Model",
    0xA435: "Lens Serial Number",
    0xA480: "GDAL Metadata",
    0xA481: "GDAL NoData",
    0xA500: "Gamma",
    0xC4A5: "Print Image Matching (PIM) Info",
    0xC6D2: "Panasonic Title",
    0xC6D3: "Panasonic Title (2)",
    0xEA1C: "Padding",
    0xFDEA: "Lens",
}
# IFD1 names the JPEG thumbnail's position; elsewhere these numbers mean nothing standard.
THUMBNAIL_TAG_NAMES: dict[int, str] = {0x0201: "Thumbnail Offset", 0x0202: "Thumbnail Length"}
GPS_TAG_NAMES: dict[int, str] = {
    0x00: "GPS Version ID",
    0x01: "GPS Latitude Ref",
    0x02: "GPS Latitude",
    0x03: "GPS Longitude Ref",
    0x04: "GPS Longitude",
    0x05: "GPS Altitude Ref",
    0x06: "GPS Altitude",
    0x07: "GPS Time-Stamp",
    0x08: "GPS Satellites",
    0x09: "GPS Status",
    0x0A: "GPS Measure Mode",
    0x0B: "GPS DOP",
    0x0C: "GPS Speed Ref",
    0x0D: "GPS Speed",
    0x0E: "GPS Track Ref",
    0x0F: "GPS Track",
    0x10: "GPS Img Direction Ref",
    0x11: "GPS Img Direction",
    0x12: "GPS Map Datum",
    0x13: "GPS Dest Latitude Ref",
    0x14: "GPS Dest Latitude",
    0x15: "GPS Dest Longitude Ref",
    0x16: "GPS Dest Longitude",
    0x17: "GPS Dest Bearing Ref",
    0x18: "GPS Dest Bearing",
    0x19: "GPS Dest Distance Ref",
    0x1A: "GPS Dest Distance",
    0x1B: "GPS Processing Method",
    0x1C: "GPS Area Information",
    0x1D: "GPS Date Stamp",
    0x1E: "GPS Differential",
    0x1F: "GPS Horizontal Positioning Error",
}


def tag_display_name(directory: str, tag_number: int) -> str:
    """metadata-extractor's name for a tag number in one of the standard EXIF directories.

    Numbers it does not know read ``Unknown tag (0x9103)``, exactly as it prints them.
    """
    if directory == "GPS":
        name = GPS_TAG_NAMES.get(tag_number)
    elif directory == THUMBNAIL_DIRECTORY and tag_number in THUMBNAIL_TAG_NAMES:
        name = THUMBNAIL_TAG_NAMES[tag_number]
    else:
        name = EXIF_TAG_NAMES.get(tag_number)
    return name if name is not None else f"Unknown tag (0x{tag_number:04x})"
