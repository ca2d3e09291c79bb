"""The session file: the decision record, the NSID writer and reader, layout, export and the HDF5
metadata probe."""
