"""The bus runtime every stage runs on: the delivery policy, the faust and confluent-kafka runners, serde,
records and dead letters, Kafka clients, consumer-group lag, the local broker. Not an adapter: stages never
import it, the composition root (ragbus/) runs them on it. With infra/, the only place that imports
confluent_kafka, faust and aiokafka."""
