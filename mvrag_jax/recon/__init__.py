"""3D from generated views: LGM cameras, a Gaussian-splatting renderer, PLY files and `mvrag reconstruct`."""
