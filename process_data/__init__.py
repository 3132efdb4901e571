"""Data preparation: videos -> frame folders, optical flow and split CSVs (the scripts in ``process_data/src``)."""
