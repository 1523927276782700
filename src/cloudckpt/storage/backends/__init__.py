"""The built-in storage backends: local, memory, s3, gcs, azure, each on
:class:`~cloudckpt.storage.backends.base.BackendBase`."""
