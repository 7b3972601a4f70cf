package rules

import _ "embed"

//go:embed schema.json
var schemaJSON []byte

// JSONSchema returns a JSON Schema (draft 2020-12) of the rule file format,
// for editors and `connwarden rules schema`. The schema checks structure and
// value formats; cross-references (list names, unique rule names, process
// fields on inbound kinds) are checked only by Compile.
func JSONSchema() []byte {
	out := make([]byte, len(schemaJSON))
	copy(out, schemaJSON)
	return out
}
