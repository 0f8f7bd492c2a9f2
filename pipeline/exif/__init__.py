"""pipeline.exif: reading a photo's EXIF, naming its tags as metadata-extractor does, and the text the model reads."""
