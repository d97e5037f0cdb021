"""geoseg: GeoTIFF catalogs to segmentation models, georeferenced masks and building footprints."""

__version__ = "0.1.0"
