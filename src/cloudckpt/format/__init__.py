"""The on-storage format, pure data with no I/O: manifest records and their versioned JSON,
the tree encoding of a state (with a type registry), chunk planning, codecs (with a registry),
checksums and object keys. Imports nothing from storage, engine or manager."""
