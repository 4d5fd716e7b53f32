//! Webhook signature schemes: HMAC-SHA256, GitHub, Stripe, Standard Webhooks.
