package detector_test

import (
	"fmt"
	"os"
	"strings"

	"github.com/connwarden/connwarden/detector"
	"github.com/connwarden/connwarden/rules"
)

// Replay reads recorded events and writes the alerts and decisions they
// cause, as JSON lines: the same bytes for the same input, every time.
func ExampleReplay() {
	set, err := rules.Compile(rules.Source{Name: "scan.yaml", Data: []byte(`
rules:
  - name: inbound-port-scan
    description: A remote host probed 3 local ports within a minute.
    mode: enforce
    severity: high
    tags: [attack.t1046]
    filter: {kind: reset_sent}
    detection:
      distinct: {field: local_port, count: 3, window: 1m, by: [remote_ip]}
    actions:
      block: {ttl: 10m}
`)})
	if err != nil {
		fmt.Println(err)
		return
	}
	events := `{"ts":1000000000,"kind":"reset_sent","direction":"inbound","local":"10.0.0.5:22","remote":"203.0.113.9:61000"}
{"ts":1100000000,"kind":"reset_sent","direction":"inbound","local":"10.0.0.5:23","remote":"203.0.113.9:61000"}
{"ts":1200000000,"kind":"reset_sent","direction":"inbound","local":"10.0.0.5:25","remote":"203.0.113.9:61000"}
{"ts":601200000000,"kind":"reset_sent","direction":"inbound","local":"10.0.0.5:80","remote":"198.51.100.1:61000"}
`
	if err := detector.Replay(strings.NewReader(events), set, os.Stdout, detector.Options{}); err != nil {
		fmt.Println(err)
	}
	// Output:
	// {"type":"block","action":"block","prefix":"203.0.113.9/32","ttl":"10m0s","rule":"inbound-port-scan","reason":"remote_ip=203.0.113.9: 3 within 1m0s","event_ts":1200000000}
	// {"type":"alert","rule":"inbound-port-scan","severity":"high","mode":"enforce","detection":"distinct","tags":["attack.t1046"],"key":"remote_ip=203.0.113.9","count":3,"window":"1m0s","first":1000000000,"last":1200000000,"values":["22","23","25"],"decision":{"action":"block","prefix":"203.0.113.9/32","ttl":"10m0s","rule":"inbound-port-scan","reason":"remote_ip=203.0.113.9: 3 within 1m0s","event_ts":1200000000},"description":"A remote host probed 3 local ports within a minute.","event":{"ts":1200000000,"kind":"reset_sent","direction":"inbound","local":"10.0.0.5:25","remote":"203.0.113.9:61000"}}
	// {"type":"unblock","action":"unblock","prefix":"203.0.113.9/32"}
}
