"""Models: network definitions, training and weight loading (CytAct 3D CNN, expression transformer,
attention fusion). Knows nothing of DICOM networking.

The first pipeline (`pet_quant`) uses no trained model; the networks arrive with the immune-profiling,
genomic and fusion work.
"""

# The expression-transformer method's baselines, by name (light: the command line lists them without
# importing scikit-learn, XGBoost or PyTorch).
EXPRESSION_BASELINES = ("svm", "random_forest", "adaboost", "xgboost", "cnn1d")
# How the attention fusion differs from its published method, wherever it affects results (the training report,
# the reproduction report, the SR and docs/methods/differences.md state them; light, for the SR's text).
FUSION_PUBLISHED_DIFFERENCES = (
    "genomic input: the expression transformer's embedding only; the published mutation vector / TMB is not an "
    "input",
    "training: the fusion head is trained on frozen modality embeddings (expression transformer, histology MIL and "
    "CytAct network trained beforehand), not end to end with the encoders",
    "clinical input: dNLR is added to the published clinical variables",
)
