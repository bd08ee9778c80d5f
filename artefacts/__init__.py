"""What every pod has: the content store, hashing, SFTP transfer, NATS helpers."""
