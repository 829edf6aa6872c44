"""Training: the engine (hierpipe.train.engine) and the training options it calls into
(hierpipe.train.options). Nothing is imported here, so that reading an option's metadata
does not pull in the backbone libraries."""
