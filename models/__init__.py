"""Models: network definitions, training and weight loading (CytAct 3D CNN, expression transformer,
attention fusion). Knows nothing of DICOM networking.

The first pipeline (`pet_quant`) uses no trained model; the networks arrive with the immune-profiling,
genomic and fusion work.
"""
