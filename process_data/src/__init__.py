"""The data-preparation scripts, each runnable as ``python process_data/src/<script>.py`` and importable as
``process_data.src.<script>``; ``jobs`` is the resumable job runner that frame and flow extraction share."""
