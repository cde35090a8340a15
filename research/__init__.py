"""Offline research commands: the statistics and training behind `immunode analyse-*`, `train *` and
`evaluate *` (delta-radiomics statistics and the acquired-resistance classifier, the expression transformer
and attention fusion with their baselines and reports, the CytAct network from a lesion manifest, outcome
statistics). They read what the CLI hands them from the store and write reports and weights with model
cards; nothing here runs in the node's online path.
"""
