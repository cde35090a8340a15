"""The PET lesion method, shared by the pipelines that find lesions on FDG-PET (`pet_quant` runs it on its own, and
`ct_radiomics` takes the study's PET lesions when the CT has no readers' contours): the PET series as an SUV volume
(`volume`, `suv`), automatic detection (`uptake`, `physiological`, `candidates`, with the CT's anatomy from
`anatomy`), the adaptive threshold T = β·I70 + I_background of the PET immune-profiling method and the lesion
measurements (`lesions`), and its parameters (`settings`, configured in `pipelines.pet_quant`). It imports no
pipeline."""
