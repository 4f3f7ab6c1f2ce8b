"""What the models take, prepared on the host the way the official release does it: `release` (reading the
official on-disk release: configs, weights, processors), `text` (prompt rule and CLIP tokens), `images` (retrieved
images -> CLIP pixel values), `camera` (the orbit cameras of the views)."""
