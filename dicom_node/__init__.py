"""DICOM networking: the storage SCP that receives, and the SCU that sends results. No analysis runs here."""
