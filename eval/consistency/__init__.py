"""Zero-shot EXIF consistency: do a photo's pixels agree with the camera metadata it claims?

:mod:`.reference` builds the reference set (other EXIF texts + calibration photos),
:mod:`.score` scores one claim against it, :mod:`.command` is ``exiflang check-exif`` and
:mod:`.evaluate` measures it like a detector (true vs swapped EXIF, ROC-AUC / AP).
"""
