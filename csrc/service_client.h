/* nsgate launcher: the client of nsgated (service_client.c). */
#ifndef NSGATE_SERVICE_CLIENT_H
#define NSGATE_SERVICE_CLIENT_H

/*
 * Hand the request to nsgated and exit with its answer. Returns only when the service is not
 * used (nothing listens on NSGATE_SOCKET, or the request does not fit one packet), with the
 * process's ids and capabilities as they were: the in-process path runs as before.
 */
void use_service_if_running(int argc, char **argv);

#endif
