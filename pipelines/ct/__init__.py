"""The `ct_radiomics` pipeline: the longitudinal CT method (delta-radiomics of the primary tumour and the
merged metastases between baseline T0 and first follow-up T1, lesion tracking and RECIST 1.1, and the
pattern of acquired resistance), reported as a DICOM SEG and a TID 1500 SR (`pipelines.ct.pipeline.CtRadiomics`)."""
