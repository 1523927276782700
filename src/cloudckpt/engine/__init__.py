"""Moving checkpoints: the writer and reader (public functions the DCP adapter uses too),
verification, the commit protocol (how a checkpoint becomes visible and is deleted) and the
bounded thread pool. Imports format and storage only."""
