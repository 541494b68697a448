package main

import (
	"context"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"os"

	"github.com/flotaio/flota/internal/httpapi"
)

// provision creates the MQTT accounts of the simulated devices (devicesim's
// default IDs, sim-00001...) through the API and writes their secrets to
// file for devicesim --credentials: the benchmark runs with authentication
// on, as production does.
func provision(ctx context.Context, api *apiClient, devices int, file string) error {
	body, err := json.Marshal(httpapi.ProvisionRequest{Prefix: "sim-", Count: devices})
	if err != nil {
		return err
	}
	var out httpapi.CredentialList
	if err := api.do(ctx, "POST", "/api/v1/devices/provision", "application/json", body, &out); err != nil {
		return fmt.Errorf("provision devices: %w", err)
	}
	f, err := os.OpenFile(file, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	w := csv.NewWriter(f)
	_ = w.Write([]string{"id", "secret"}) // errors are kept by w
	for _, c := range out.Credentials {
		_ = w.Write([]string{c.ID, c.Secret})
	}
	w.Flush()
	if err := w.Error(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
