//! The edge hub: MQTT endpoint for modules, routing, durable queues, twins and methods.
