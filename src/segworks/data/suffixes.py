"""The file suffixes segworks reads, in one place (first suffix wins when stems collide)."""

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".gif")
MASK_SUFFIXES = (".png", ".bmp", ".tif", ".tiff", ".gif", ".npy", ".json", ".jpg", ".jpeg")
LOSSY_SUFFIXES = (".jpg", ".jpeg")
