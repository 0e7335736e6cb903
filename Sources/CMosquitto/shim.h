#ifndef EDGEFLEET_CMOSQUITTO_SHIM_H
#define EDGEFLEET_CMOSQUITTO_SHIM_H

// The whole C surface EdgeFleet uses: libmosquitto 2.0.x and its MQTT v5
// protocol constants. Only the MQTT module imports this.
#include <mosquitto.h>
#include <mqtt_protocol.h>

#endif
