// Package test holds connwarden's end-to-end tests: the real agent binary,
// run in throw-away network namespaces (see package topology), attacked from
// other namespaces, observed through its API, alert log and metrics.
//
// Every test builds its own topology, pin directory and API socket, so tests
// run in parallel with each other and with an agent on the machine. Traffic
// goes only to addresses inside the test's namespaces.
package test
