"""The models the pipeline scores and compares images with (open_clip, DALIP checkpoints); torch lives here."""
