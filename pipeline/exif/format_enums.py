"""Lookup tables that turn coded EXIF values into metadata-extractor's words.

Each entry maps a tag number to ``(first code, labels...)``: the label for code ``c`` is
``labels[c - first]``; a code outside the table (or a ``None`` hole) reads ``Unknown (c)``,
which is what metadata-extractor prints.  Sparse codes (light source, compression, ...) use
plain dicts.
"""

from __future__ import annotations

ORIENTATIONS = (
    "Top, left side (Horizontal / normal)",
    "Top, right side (Mirror horizontal)",
    "Bottom, right side (Rotate 180)",
    "Bottom, left side (Mirror vertical)",
    "Left side, top (Mirror horizontal and rotate 270 CW)",
    "Right side, top (Rotate 90 CW)",
    "Right side, bottom (Mirror horizontal and rotate 90 CW)",
    "Left side, bottom (Rotate 270 CW)",
)

INDEXED: dict[int, tuple] = {
    0x00FE: (
        0,
        "Full-resolution image",
        "Reduced-resolution image",
        "Single page of multi-page image",
        "Single page of multi-page reduced-resolution image",
        "Transparency mask",
        "Transparency mask of reduced-resolution image",
        "Transparency mask of multi-page image",
        "Transparency mask of reduced-resolution multi-page image",
    ),
    0x00FF: (1, "Full-resolution image", "Reduced-resolution image", "Single page of multi-page image"),
    0x0107: (1, "No dithering or halftoning", "Ordered dither or halftone", "Randomized dither"),
    0x010A: (1, "Normal", "Reversed"),
    0x0112: (1,) + ORIENTATIONS,
    0x011C: (1, "Chunky (contiguous for each subsampling pixel)", "Separate (Y-plane/Cb-plane/Cr-plane format)"),
    0x0128: (1, "(No unit)", "Inch", "cm"),
    0x0152: (0, "Unspecified", "Associated alpha", "Unassociated alpha"),
    0x0213: (1, "Center of pixel array", "Datum point"),
    0x8822: (
        1,
        "Manual control",
        "Program normal",
        "Aperture priority",
        "Shutter priority",
        "Program creative (slow program)",
        "Program action (high-speed program)",
        "Portrait mode",
        "Landscape mode",
    ),
    0x8830: (
        0,
        "Unknown",
        "Standard Output Sensitivity",
        "Recommended Exposure Index",
        "ISO Speed",
        "Standard Output Sensitivity and Recommended Exposure Index",
        "Standard Output Sensitivity and ISO Speed",
        "Recommended Exposure Index and ISO Speed",
        "Standard Output Sensitivity, Recommended Exposure Index and ISO Speed",
    ),
    0xA210: (1, "(No unit)", "Inches", "cm"),
    0xA217: (
        1,
        "(Not defined)",
        "One-chip color area sensor",
        "Two-chip color area sensor",
        "Three-chip color area sensor",
        "Color sequential area sensor",
        None,
        "Trilinear sensor",
        "Color sequential linear sensor",
    ),
    0xA300: (1, "Film Scanner", "Reflection Print Scanner", "Digital Still Camera (DSC)"),
    0xA301: (1, "Directly photographed image"),
    0xA401: (0, "Normal process", "Custom process"),
    0xA402: (0, "Auto exposure", "Manual exposure", "Auto bracket"),
    0xA403: (0, "Auto white balance", "Manual white balance"),
    0xA406: (0, "Standard", "Landscape", "Portrait", "Night scene"),
    0xA407: (0, "None", "Low gain up", "Low gain down", "High gain up", "High gain down"),
    0xA408: (0, "None", "Soft", "Hard"),
    0xA409: (0, "None", "Low saturation", "High saturation"),
    0xA40A: (0, "None", "Low", "Hard"),
    0xA40C: (0, "Unknown", "Macro", "Close view", "Distant view"),
}

GPS_INDEXED: dict[int, tuple] = {
    0x05: (0, "Sea level", "Below sea level"),
    0x1E: (0, "No Correction", "Differential Corrected"),
}

# Exif 0x9208 LightSource, which metadata-extractor calls "White Balance".
LIGHT_SOURCES: dict[int, str] = {
    0: "Unknown",
    1: "Daylight",
    2: "Florescent",
    3: "Tungsten (Incandescent)",
    4: "Flash",
    9: "Fine Weather",
    10: "Cloudy",
    11: "Shade",
    12: "Daylight Fluorescent",
    13: "Day White Fluorescent",
    14: "Cool White Fluorescent",
    15: "White Fluorescent",
    16: "Warm White Fluorescent",
    17: "Standard light A",
    18: "Standard light B",
    19: "Standard light C",
    20: "D55",
    21: "D65",
    22: "D75",
    23: "D50",
    24: "ISO Studio Tungsten",
    255: "Other",
}

METERING_MODES: dict[int, str] = {
    0: "Unknown",
    1: "Average",
    2: "Center weighted average",
    3: "Spot",
    4: "Multi-spot",
    5: "Multi-segment",
    6: "Partial",
    255: "(Other)",
}

COMPRESSIONS: dict[int, str] = {
    1: "Uncompressed",
    2: "CCITT 1D",
    3: "T4/Group 3 Fax",
    4: "T6/Group 4 Fax",
    5: "LZW",
    6: "JPEG (old-style)",
    7: "JPEG",
    8: "Adobe Deflate",
    9: "JBIG B&W",
    10: "JBIG Color",
    99: "JPEG",
    262: "Kodak 262",
    32766: "Next",
    32767: "Sony ARW Compressed",
    32769: "Packed RAW",
    32770: "Samsung SRW Compressed",
    32771: "CCIRLEW",
    32772: "Samsung SRW Compressed 2",
    32773: "PackBits",
    32809: "Thunderscan",
    32867: "Kodak KDC Compressed",
    32895: "IT8CTPAD",
    32896: "IT8LW",
    32897: "IT8MP",
    32898: "IT8BL",
    32908: "PixarFilm",
    32909: "PixarLog",
    32946: "Deflate",
    32947: "DCS",
    34661: "JBIG",
    34676: "SGILog",
    34677: "SGILog24",
    34712: "JPEG 2000",
    34713: "Nikon NEF Compressed",
    34715: "JBIG2 TIFF FX",
    34718: "Microsoft Document Imaging (MDI) Binary Level Codec",
    34719: "Microsoft Document Imaging (MDI) Progressive Transform Codec",
    34720: "Microsoft Document Imaging (MDI) Vector",
    34892: "Lossy JPEG",
    65000: "Kodak DCR Compressed",
    65535: "Pentax PEF Compressed",
}

PHOTOMETRIC: dict[int, str] = {
    0: "WhiteIsZero",
    1: "BlackIsZero",
    2: "RGB",
    3: "RGB Palette",
    4: "Transparency Mask",
    5: "CMYK",
    6: "YCbCr",
    8: "CIELab",
    9: "ICCLab",
    10: "ITULab",
    32803: "Color Filter Array",
    32844: "Pixar LogL",
    32845: "Pixar LogLuv",
    32892: "Linear Raw",
}

SAMPLE_FORMATS: dict[int, str] = {
    1: "Unsigned",
    2: "Signed",
    3: "Float",
    4: "Undefined",
    5: "Complex int",
    6: "Complex float",
}

JPEG_PROCS: dict[int, str] = {1: "Baseline", 14: "Lossless"}

COMPONENTS = ("", "Y", "Cb", "Cr", "R", "G", "B")
CFA_COLOURS = ("Red", "Green", "Blue", "Cyan", "Magenta", "Yellow", "White")

# Single-letter GPS reference codes; the value is the description, unknown codes read "Unknown (x)".
GPS_LETTER_CODES: dict[int, dict[str, str]] = {
    0x09: {"A": "Active (Measurement in progress)", "V": "Void (Measurement Interoperability)"},
    0x0A: {"2": "2-dimensional measurement", "3": "3-dimensional measurement"},
    0x0C: {"K": "km/h", "M": "mph", "N": "knots"},
    0x0E: {"T": "True direction", "M": "Magnetic direction"},
    0x10: {"T": "True direction", "M": "Magnetic direction"},
    0x17: {"T": "True direction", "M": "Magnetic direction"},
    0x19: {"K": "kilometers", "M": "miles", "N": "knots"},
}


def indexed(table: tuple, code: int) -> str:
    """Label for ``code`` in an ``INDEXED``-style table, or ``Unknown (code)``."""
    first, labels = table[0], table[1:]
    pos = code - first
    label: str | None = labels[pos] if 0 <= pos < len(labels) else None
    return label if label is not None else f"Unknown ({code})"


def lookup(table: dict[int, str], code: int) -> str:
    return table.get(code, f"Unknown ({code})")
