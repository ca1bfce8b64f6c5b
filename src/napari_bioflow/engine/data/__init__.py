"""Reading and preparing inputs: image files and zarr stores (io, zarr_image), pairing raw with labels (pairing,
sources, input_notes), normalisation, patch sampling and training batches (sampling, training_data), augmentation
(augment*), and class folders for classifiers (classification_data). Depends on nothing else in the engine but
errors and storage; train/ and predict/ build on it."""
