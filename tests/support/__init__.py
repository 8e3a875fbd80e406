"""What tests share: packet builders, in-memory stand-ins for the proxy's queue and SVM
source, and the libxl simulation. Imported as `tests.support.<module>`."""
