"""The `pet_quant` pipeline: FDG-PET lesions by the adaptive threshold T = β·I70 + I_background of the PET
immune-profiling method, their SUV measurements and predicted cytolytic activity (CytAct), reported as a
DICOM SEG and a TID 1500 SR per PET series (`pipelines.pet.pipeline.PetQuant`)."""
