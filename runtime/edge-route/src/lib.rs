//! The Azure IoT Edge route language (to be written): `parse` → `compile` → `Router::route`.
