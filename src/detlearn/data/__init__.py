"""Data between the store and the models.

- ``bins``: rows binned by a context column;
- ``holdout``: held-out grid points and sparse labels;
- ``selection``: the train and val rows a model trains on (less sparse and held-out labels);
- ``tensors``: the tensors of a conditional density;
- ``images``: calorimeter hits to images, vectorized over a batch of events.
"""
