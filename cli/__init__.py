"""kreport: turns kcallbacks run directories into reports. Never imports TensorFlow."""
