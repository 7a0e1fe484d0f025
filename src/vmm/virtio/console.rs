//! virtio-console (placeholder)
