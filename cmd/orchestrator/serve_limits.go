package main

import (
	"errors"
	"flag"

	"github.com/flotaio/flota/broker"
)

// topicLimitFlags adds serve's flags bounding what one MQTT client may
// publish and subscribe (broker.TopicLimits, docs/SECURITY.md "Limits
// against hostile clients").
func topicLimitFlags(fs *flag.FlagSet, c *Config) {
	l := &c.TopicLimits
	fs.IntVar(&l.MaxTopicLength, "mqtt-max-topic-length", broker.DefaultMaxTopicLength, "longest topic or filter, in bytes, an MQTT client may publish, subscribe or set as its will")
	fs.IntVar(&l.MaxTopicLevels, "mqtt-max-topic-levels", broker.DefaultMaxTopicLevels, "most levels in a topic or filter an MQTT client may publish, subscribe or set as its will")
	fs.IntVar(&l.MaxSubscriptions, "mqtt-max-subscriptions", broker.DefaultMaxSubscriptions, "most filters one MQTT client may be subscribed to")
	fs.Float64Var(&l.SubscribeRate, "mqtt-subscribe-rate", broker.DefaultSubscribeRate, "SUBSCRIBE packets per second one MQTT connection may send; over it they are refused (-1: no limit)")
	fs.IntVar(&l.SubscribeBurst, "mqtt-subscribe-burst", broker.DefaultSubscribeBurst, "burst of --mqtt-subscribe-rate")
}

// checkTopicLimits validates the topic limit flags.
func (c *Config) checkTopicLimits() error {
	l := c.TopicLimits
	if l.MaxTopicLength < 0 || l.MaxTopicLevels < 0 || l.MaxSubscriptions < 0 || l.SubscribeBurst < 0 {
		return errors.New("--mqtt-max-topic-length, --mqtt-max-topic-levels, --mqtt-max-subscriptions and --mqtt-subscribe-burst must not be negative")
	}
	if l.MaxTopicLength > 0 && l.MaxTopicLength < broker.MinTopicLength || l.MaxTopicLevels > 0 && l.MaxTopicLevels < broker.MinTopicLevels {
		return errors.New("--mqtt-max-topic-length and --mqtt-max-topic-levels below what the protocol's own topics need")
	}
	return nil
}
