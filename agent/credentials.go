package agent

import (
	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/flotaio/flota/internal/protocol"
)

// setCredentials sets the MQTT username, password and TLS configuration.
func (a *Agent) setCredentials(opts *mqtt.ClientOptions) {
	user, pw := a.cfg.Username, a.cfg.Password
	if a.cfg.EnrollToken != "" {
		pw = protocol.EnrollPassword(a.cfg.EnrollToken, pw)
	}
	if user == "" && pw != "" {
		user = a.cfg.ID
	}
	if user != "" {
		opts.SetUsername(user)
	}
	if pw != "" {
		opts.SetPassword(pw)
	}
	if a.cfg.TLSConfig != nil {
		opts.SetTLSConfig(a.cfg.TLSConfig)
	}
}
