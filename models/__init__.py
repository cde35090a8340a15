"""Models: network definitions, training and weight loading (CytAct 3D CNN, expression transformer,
attention fusion). Knows nothing of DICOM networking.

The first pipeline (`pet_quant`) uses no trained model; the networks arrive with the immune-profiling,
genomic and fusion work.
"""

# The expression-transformer method's baselines, by name (light: the command line lists them without
# importing scikit-learn, XGBoost or PyTorch).
EXPRESSION_BASELINES = ("svm", "random_forest", "adaboost", "xgboost", "cnn1d")
