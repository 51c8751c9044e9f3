//! Network Block Device client: remote secondaries over nbd:// and nbd+unix:// URIs.
