"""C sources of the QEMU plugin and the ring consumer, shipped so they can be built on first use."""
