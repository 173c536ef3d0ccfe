"""Training data: the preprocessed store, the dataset sources (MEAD, RAVDESS, folders of
videos) and the synthetic benchmark."""
