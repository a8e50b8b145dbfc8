UPDATE role SET scopes = array_remove(array_remove(scopes, 'webhooks:read'), 'webhooks:write') WHERE name = 'admin';
DROP TABLE webhook_delivery;
DROP FUNCTION webhook_delivery_notify();
DROP TABLE outbox_event;
DROP TABLE webhook_subscription;
