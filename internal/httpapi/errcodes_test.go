package httpapi

import (
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Every code the API can answer with is named in openapi.json, where
// programs look for them.
func TestOpenAPI_ErrorCodeListsEveryCodeTheAPIAnswers(t *testing.T) {
	var doc struct {
		Components struct {
			Schemas map[string]struct {
				Properties map[string]struct {
					Description string `json:"description"`
				} `json:"properties"`
			} `json:"schemas"`
		} `json:"components"`
	}
	require.NoError(t, json.Unmarshal(openAPIDoc, &doc))
	desc := doc.Components.Schemas["Error"].Properties["code"].Description
	codes := []string{CodeNotFound, CodeTooLarge, CodeInternal, CodeUnavailable, CodeInvalidInput,
		CodeInvalidPolicy, CodeMethodNotAllowed, CodeStoreUnavailable, CodeUnauthorized, CodeForbidden, codeTokenInFile}
	for _, s := range sentinels {
		codes = append(codes, s.code)
	}
	for _, c := range codes {
		assert.Regexp(t, `\b`+c+`\b`, desc, "Error.code in openapi.json")
	}
}
